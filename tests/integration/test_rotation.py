"""Password rotation during a running experiment (issue 9): ``rotate_password()`` (playbooks/rotate.yml)
gives the experiment user a new password while an ``fmin`` of plain ``MongoTrials`` runs on 2 workers
of a local cluster. The fmin finishes every trial exactly once, the old password is refused and the new
one accepted, workers and server restarted with it, and no playbook output holds either password.
"""

from __future__ import annotations

import time
from pathlib import Path

import pymongo
import pytest
from hyperopt import STATUS_OK
from hyperopt.mongoexp import MongoTrials
from local_cluster import LocalInventory, fmin_in_background, free_port, make_local_inventory
from pymongo.errors import OperationFailure

from pyhoptcluster import HyperoptCluster
from pyhoptcluster.control import cli

pytestmark = pytest.mark.integration

N_TRIALS = 60  # of 1 s each on 2 workers: about 30 s, the rotation starts after 4


def _done(local: LocalInventory, exp_key: str) -> int:
    """DONE trials of ``exp_key``, with whatever password the file holds now (0 while the server restarts)."""
    client = local.client(timeout_ms=5000)
    try:
        return client.hyperopt.jobs.count_documents({"exp_key": exp_key, "state": 2})
    except pymongo.errors.PyMongoError:
        return 0
    finally:
        client.close()


def test_rotation_during_a_running_fmin_loses_no_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = make_local_inventory(tmp_path, hyperopt_mongodb_port=free_port())
    cluster = HyperoptCluster(str(local.path), progress=False)
    password_file = local.state_dir / "mongodb.password"
    try:
        cluster.start(worker_count=2)
        old = password_file.read_text().strip()
        pids_before = local.pids()

        def objective(x: float) -> dict[str, object]:
            import time

            time.sleep(1.0)
            return {"loss": x * x, "status": STATUS_OK}

        trials = MongoTrials(cluster.mongo_trial_url, exp_key="rotation")
        driver, failure = fmin_in_background(trials, objective, N_TRIALS, max_queue_len=2)
        deadline = time.monotonic() + 120
        while _done(local, "rotation") < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _done(local, "rotation") >= 4, "the experiment did not get going"

        began = time.monotonic()
        cluster.rotate_password()
        print(f"\nrotate_password() took {time.monotonic() - began:.1f} s")
        new = password_file.read_text().strip()
        assert new != old and len(new) == 32
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        rotated_at = _done(local, "rotation")
        assert rotated_at < N_TRIALS, "the experiment ended before the rotation: make it longer"

        driver.join(timeout=300)
        assert not driver.is_alive(), "fmin did not finish after the rotation"
        assert not failure, failure

        # every trial finished exactly once, none failed
        client = local.client(new, timeout_ms=5000)
        docs = list(client.hyperopt.jobs.find({"exp_key": "rotation"}, {"tid": 1, "state": 1, "result": 1}))
        assert len(docs) == N_TRIALS
        assert len({d["tid"] for d in docs}) == N_TRIALS
        assert all(d["state"] == 2 and d["result"]["status"] == STATUS_OK for d in docs)
        trials.refresh()
        assert len(trials.trials) == N_TRIALS
        client.close()

        # the old password is refused, the new one accepted; the workers and the server run with it
        stale = local.client(old, timeout_ms=5000)
        with pytest.raises(OperationFailure, match=r"(?i)auth"):
            stale.hyperopt.command("ping")
        stale.close()
        worker_conf = (local.worker_state_dir / "worker.conf").read_text()
        assert new in worker_conf and old not in worker_conf
        pids_after = local.pids()
        assert set(pids_after) == set(pids_before)
        assert all(pids_after[p] != pids_before[p] for p in pids_before), (pids_before, pids_after)

        # a fresh facade (another notebook) gets the new password in its URL
        assert f":{new}@" in HyperoptCluster(str(local.path)).mongo_trial_url

        # the CLI rotates too; neither password is in any output
        capsys.readouterr()
        assert cli.main(["rotate-password", "-i", str(local.path), "-q"]) == 0
        newest = password_file.read_text().strip()
        assert newest not in (old, new)
        printed = capsys.readouterr()
        cluster.print_log()
        logged = capsys.readouterr().out
        for secret in (old, new, newest):
            assert secret not in printed.out + printed.err + logged
        assert str(password_file) in printed.out

        # check mode reports and changes nothing: same password, same processes
        pids = local.pids()
        local.playbook("rotate.yml", "--check")
        assert password_file.read_text().strip() == newest
        assert local.pids() == pids
    finally:
        cluster.cleanup()
        local.kill_leftovers()
