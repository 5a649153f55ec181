"""Experiments over punched paths (issue 17): traffic measurement (traffic.py, measure.py), declarative
sweeps of lab trials (sweep.py, runner.py, trial.py) and plots of the recorded JSON lines (plots.py).

The traffic and sweep code needs only nattrav; the live progress display needs `rich` and the plots
`matplotlib` (pip install 'nattrav[experiment]')."""
