"""The control side: runs on the control node only (the facade ``HyperoptCluster``, the launchers,
the ansible-runner glue, the CLI, status, logs, drain, the report and dashboard). It drives the
collection ``pyhoptcluster.cluster`` that the wheel carries (:func:`.runner.ansible_dir`)."""
