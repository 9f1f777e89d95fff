"""quantbench's pytest plugin (the ``pytest11`` entry point ``quantbench``; see ARCHITECTURE.md).

- `entry`: options, markers, when the bench runs, and the objects it registers;
- `options`: the option table (`BenchOptions`): flags, parsed values, the build phase's argv, the header;
- `startup`: the tables and the run a session reads and checks before anything is built;
- `context`: `BenchContext`, the process's options, tables, device, pipeline and run ledger;
- `evidence`: `GateEvidence`, the comparisons and spreads handed to the gate, and `enforce`;
- `latency`: `LatencyRecords`, timed results, the baseline's latency, time spent measuring;
- `extra_info`: ``extra_info["quantbench"]`` of a latency benchmark;
- `session`: `BenchSession`, what the ``qb`` fixture hands a test (the three above);
- `hooks`: `BenchHooks`, the object whose ``pytest_*`` methods are the bench's hooks;
- `build_phase`: ``--qb-build-workers``, the parallel build phase started only when the caches lack something;
- `results`: the run's records gathered at session end, the selection and the report;
- `params`: test parameters and the run id;
- `suite`: the standard accuracy and latency tests, imported by bench/ and by any repository.

The fixture chain lives in the repository's ``fixtures/`` folder, installed as `quantbench.fixtures`.
Thin adapters: the work is done by quantbench's library modules, through `quantbench.pipeline`.
"""
