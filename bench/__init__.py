"""dlopt's benchmarks, one command-line entry: `python -m bench <command> [flags]`.

    python -m bench --help                          # the commands
    python -m bench conv --quick                    # one of them; JSON in bench/results/
    python -m bench peers-throughput --tiny         # a smoke run, JSON in a temp directory
    python -m bench tables                          # README's tables from bench/results/

Run from the repository root with the project's venv. Every result records the machine,
device, package versions, date, exact command, run count and min/median/max of each timed
quantity (see `bench._runner`). Nothing imports this package; it imports dlopt and kernels.
"""
