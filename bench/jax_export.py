"""Writes the StableHLO text of a reference workload's jitted train step (JAX's own lowering
of ../shared/bench-style jax_ref.py), to run on a PJRT plugin with bench/pjrt_time.c.

    python3 bench/jax_export.py --refs ../shared/bench mlp /tmp/jax_mlp.mlir
"""
import argparse, os, sys

p = argparse.ArgumentParser()
p.add_argument("--refs", required=True, help="folder with jax_ref.py")
p.add_argument("workload")
p.add_argument("out")
a = p.parse_args()

import jax
jit = jax.jit
def exporting_jit(f, *args, **kwargs):
    compiled = jit(f, *args, **kwargs)
    def call(*xs):
        if not os.path.exists(a.out):
            with open(a.out, "w") as out:
                out.write(compiled.lower(*xs).as_text())
        return compiled(*xs)
    return call
jax.jit = exporting_jit
sys.argv = ["jax_ref.py", a.workload, "--steps", "1", "--repeats", "1"]
script = os.path.join(a.refs, "jax_ref.py")
exec(compile(open(script).read(), script, "exec"), {"__name__": "__main__"})
