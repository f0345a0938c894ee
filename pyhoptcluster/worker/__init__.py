"""The worker side: the long-lived ``pyhoptcluster-worker`` (:mod:`.main`), its config, logging, job
engine, isolation and heartbeats. Runs on the worker hosts, whose venv has hyperopt and pymongo but no
Ansible: nothing here imports the control side (tests/unit/test_package_split.py checks it)."""
