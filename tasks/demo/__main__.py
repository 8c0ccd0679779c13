"""``python -m tasks.demo``: the main job (:func:`tasks.demo.job.main`)."""
from tasks.common.cli import run_main
from tasks.demo.job import main

run_main(main)
