"""The test suite. One OpenMP thread per process, set before torch or tblite start their
thread pools: the MOF labelling tests fork workers, and a child forked from a process whose
OpenMP pool is running can deadlock (the suite also runs faster so on 2 cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
