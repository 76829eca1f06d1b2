"""fastconv's airspeed velocity suites (one ``bench_<area>.py`` per area, shapes in ``common``).

From ``bench/`` (paths in asv.conf.json are relative to it), against the installed package:

    asv machine --yes --config asv.conf.json                  # once per machine
    asv run --config asv.conf.json --python=same --quick      # every benchmark once, nothing saved
    asv run --config asv.conf.json --python=same --bench Conv2dForward   # one suite, full timing
    asv run --config asv.conf.json --python=same --set-commit-hash=$(git rev-parse HEAD)  # save results
    asv publish --config asv.conf.json && asv preview --config asv.conf.json   # HTML report in bench/html
    asv compare --config asv.conf.json <commit1> <commit2>    # two saved runs

Implementations that cannot run here (a backend not built, no GPU, no PyTorch) are skipped, shown as
"n/a". ``FASTCONV_BENCH_THREADS`` (default 2) sets the thread count of fastconv, PyTorch and the BLAS.
"""
