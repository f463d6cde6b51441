"""How every PyTorch peer in this folder times a training step, as `loom bench` does: 5 warm-up
steps, then `repeats` timed runs of `steps` steps; the median run's rate is the figure."""
import statistics, time


def timed(step, units, steps, repeats):
    """(median items/s, each run's items/s, the last step's loss) for `step()`, which trains one
    step of `units` items and returns its loss as a float."""
    for _ in range(5):
        loss = step()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        runs.append(units * steps / (time.perf_counter() - t0))
    return statistics.median(runs), runs, loss
