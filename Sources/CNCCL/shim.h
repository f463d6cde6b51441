#pragma once
// The one NCCL type Loom's Swift code needs to declare: the unique id, passed by value to
// ncclCommInitRank (128 bytes, in memory under the x86-64 and AArch64 calling conventions).
// NCCL itself is opened with dlopen at run time (LoomCUDA/NCCL.swift); nothing links it.
typedef struct { char internal[128]; } ncclUniqueId;
