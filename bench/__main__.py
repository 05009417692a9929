"""`python -m bench`: every benchmark in turn (the scale run excepted: `python -m bench.scale`),
then the summary table `bench/results/README.md`. A failing benchmark is reported and the
others still run; the exit status says whether all succeeded."""

import subprocess
import sys

from bench.summary import write_summary

BENCHMARKS = ("ingest", "encode", "profiles", "freshness", "recommender", "search", "serve")


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"== bench.{name}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"]).returncode != 0:
            failed.append(name)
    print(write_summary().read_text())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
