"""pymongo-4 compatibility for hyperopt's Mongo mode (``hyperopt.mongoexp``).

Every hyperopt release (0.3.0 included) calls pymongo-3 APIs that pymongo 4 removed:
``Collection.find_and_modify/count/insert/update/remove``, ``Cursor.count`` and
``Database.authenticate``. :func:`apply` replaces the affected functions and methods of
``hyperopt.mongoexp`` in place with pymongo-4 equivalents, so user code keeps working unchanged::

    import pyhoptcluster  # calls apply()
    from hyperopt.mongoexp import MongoTrials
    fmin(..., trials=MongoTrials("mongo://user:pw@host:port/db/jobs", exp_key="x"))

Behaviour is kept as stock except where stock could not work or was plainly broken:

* user and password in the URL are percent-decoded (``quote()`` them when building a URL);
  a URL without a port means 27017 (stock crashed);
* credentials go to ``MongoClient(username=, password=, authSource=)`` with hyperopt's
  authSource rule (:func:`auth_source`); the connection is checked with a ``ping`` so a wrong
  password fails at construction, as ``authenticate()`` did; with ``mongo+ssh`` the credentials
  are used too (stock silently skipped them);
* ``MongoTrials.new_trial_ids`` no longer sleeps 1 s on the first call of a fresh database, and a
  unique index on ``job_ids.a`` keeps concurrent first calls from handing out the same ids;
* ``MongoWorker.run_one`` honours a poll interval below 1 s (:func:`poll_sleep_interval`);
* ``MongoJobs.alloc`` passes the ``config_name`` its constructor requires;
* the driver's reads and writes retry through a server outage, and its poll reclaims stale jobs of
  dead workers (:mod:`pyhoptcluster.compat.outage`, :mod:`pyhoptcluster.worker.liveness`);
* the driver's refresh reads only the trials that can have changed, with an index on
  ``(exp_key, state)`` for its counts, so its cost does not grow with the experiment
  (:mod:`pyhoptcluster.compat.refresh`);
* an ``fmin`` whose trials all failed raises :class:`TrialsFailedError` quoting the first trials'
  errors, instead of "There are no evaluation tasks, cannot return argmin" (nothing changes when a
  trial succeeded).

URL parsing and connections live in :mod:`pyhoptcluster.compat.mongourl` (also importable from here);
this module holds the replaced job-queue, trials and worker methods and :func:`apply`.

This module belongs to the worker side: it imports nothing from Ansible or the control side.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from collections.abc import Mapping
from typing import Any

import gridfs
import numpy
import pymongo
import pymongo.errors
from bson.errors import InvalidDocument
from hyperopt import mongoexp
from hyperopt.base import (
    JOB_STATE_DONE,
    JOB_STATE_ERROR,
    JOB_STATE_NEW,
    JOB_STATE_RUNNING,
    JOB_STATES,
    SONify,
    spec_from_misc,
)
from hyperopt.utils import coarse_utcnow, json_call, temp_dir, working_dir
from pymongo import ReturnDocument

from pyhoptcluster.compat import failures, outage, refresh
from pyhoptcluster.compat.failures import TrialsFailedError
from pyhoptcluster.compat.mongourl import (
    DEFAULT_PORT,
    auth_source,
    connection_from_string,
    connection_with_tunnel,
    jobs_alloc,
    jobs_new_from_connection_str,
    mask_url,
    number_of_jobs_in_db,
    parse_url,
)

__all__ = [
    "DEFAULT_PORT",
    "TrialsFailedError",
    "apply",
    "auth_source",
    "connection_with_tunnel",
    "is_applied",
    "load_worker_fn",
    "mask_url",
    "open_jobs",
    "parse_url",
    "poll_sleep_interval",
]

logger = logging.getLogger(mongoexp.__name__)  # log as hyperopt.mongoexp did

_MARKER = "_pyhoptcluster_pymongo4"
# stock objects that were replaced, by "<owner>.<name>", for inspection and tests
ORIGINALS: dict[str, Any] = {}


# --------------------------------------------------------------------------- pure helpers


def poll_sleep_interval(poll_interval: float, rand: float | None = None) -> float:
    """Seconds a worker sleeps after finding the queue empty.

    Stock sleeps ``1 + rand * (poll - 1)``, i.e. uniform(1, poll): never less than 1 s, and a
    value in (poll, 1) for a poll below 1 s. Kept for ``poll >= 1``; below 1 s the poll interval
    itself is used, so a short interval is honoured.
    """
    poll = float(poll_interval)
    if poll < 1.0:
        return max(poll, 0.0)
    if rand is None:
        rand = float(numpy.random.rand())
    return 1.0 + rand * (poll - 1.0)


def _check_keys(doc: Any) -> None:
    """What pymongo 3's ``insert(check_keys=True)`` refused: keys starting with '$' or holding '.'."""
    if isinstance(doc, Mapping):
        for key, value in doc.items():
            if isinstance(key, str) and (key.startswith("$") or "." in key):
                raise InvalidDocument(f"key {key!r} must not start with '$' or contain '.'")
            _check_keys(value)
    elif isinstance(doc, list | tuple):
        for value in doc:
            _check_keys(value)


def _jobs_len(self):
    try:
        return self.jobs.count_documents({})
    except Exception:
        return 0


def _jobs_insert(self, job):
    """Return a job dictionary by inserting the job dict into the database"""
    try:
        cpy = copy.deepcopy(job)
        _check_keys(cpy)
        # -- this call adds an _id field to cpy
        _id = self.jobs.insert_one(cpy).inserted_id
        assert _id == cpy["_id"]
        return cpy
    except pymongo.errors.OperationFailure as e:
        raise mongoexp.OperationFailure(e) from e


def _jobs_delete(self, job):
    """Delete job[s]"""
    try:
        # pymongo 3's remove(spec_or_id) removed every match; a bare id means {'_id': id}
        self.jobs.delete_many(job if isinstance(job, Mapping) else {"_id": job})
    except pymongo.errors.OperationFailure as e:
        raise mongoexp.OperationFailure(e) from e


def _jobs_delete_all(self, cond=None):
    """Delete all jobs and attachments"""
    if cond is None:
        cond = {}
    try:
        for d in self.jobs.find(filter=cond, projection=["_id", "_attachments"]):
            logger.info("deleting job %s", d["_id"])
            for name, file_id in d.get("_attachments", []):
                try:
                    self.gfs.delete(file_id)
                except gridfs.errors.NoFile:
                    logger.error("failed to remove attachment %s:%s", name, file_id)
            self.jobs.delete_one({"_id": d["_id"]})
    except pymongo.errors.OperationFailure as e:
        raise mongoexp.OperationFailure(e) from e


def _jobs_reserve(self, host_id, cond=None, exp_key=None):
    now = coarse_utcnow()
    cond = {} if cond is None else copy.copy(cond)
    if exp_key is not None:
        cond["exp_key"] = exp_key
    # having an owner of None implies state==JOB_STATE_NEW
    if cond.get("owner") is not None:
        raise ValueError("refusing to reserve owned job")
    cond["owner"] = None
    cond["state"] = JOB_STATE_NEW
    try:
        rval = self.jobs.find_one_and_update(
            cond,
            {"$set": {"owner": host_id, "book_time": now, "state": JOB_STATE_RUNNING, "refresh_time": now}},
            upsert=False,
            return_document=ReturnDocument.AFTER,
        )
    except pymongo.errors.OperationFailure as e:
        logger.error("Error during reserve_job: %s", e)
        rval = None
    return rval


def _jobs_update(self, doc, dct, collection=None, do_sanity_checks=True):
    """Return union of doc and dct, after making sure that dct has been
    added to doc in `collection`.

    This function does not modify either `doc` or `dct`.
    """
    if collection is None:
        collection = self.collection
    dct = copy.deepcopy(dct)
    if "_id" not in doc:
        raise ValueError('doc must have an "_id" key to be updated')
    if "_id" in dct:
        if dct["_id"] != doc["_id"]:
            raise ValueError("cannot update the _id field")
        del dct["_id"]
    if "version" in dct and dct["version"] != doc["version"]:
        warnings.warn('Ignoring "version" field in update dictionary', stacklevel=2)
    if "version" in doc:
        doc_query = dict(_id=doc["_id"], version=doc["version"])
        dct["version"] = doc["version"] + 1
    else:
        doc_query = dict(_id=doc["_id"])
        dct["version"] = 1
    try:
        # warning - if doc matches nothing then this function succeeds
        collection.update_one(doc_query, {"$set": dct}, upsert=False)
    except pymongo.errors.OperationFailure as e:
        raise mongoexp.OperationFailure(e) from e
    # update doc in-place to match what happened on the server side
    doc.update(dct)
    if do_sanity_checks:
        server_doc = collection.find_one(dict(_id=doc["_id"], version=doc["version"]))
        if server_doc is None:
            raise mongoexp.OperationFailure(f"updated doc not found : {doc}")
    return doc


# --------------------------------------------------------------------------- MongoTrials


def _trials_insert_trial_docs(self, docs):
    rval = []
    for doc in docs:
        _check_keys(doc)
        rval.append(outage.insert_once(self.handle, doc))
    refresh.inserted(self, rval)
    return rval


def _trials_count_by_state_unsynced(self, arg):
    cached = refresh.cached_count(self, arg)
    if cached is not None:  # fmin's count of DONE right after its refresh (refresh.py)
        return cached
    exp_key = self._exp_key
    if isinstance(arg, int):
        if arg not in JOB_STATES:
            raise ValueError("invalid state", arg)
        query = dict(state=arg)
    else:
        assert hasattr(arg, "__iter__")
        states = list(arg)
        assert all(x in JOB_STATES for x in states)
        query = dict(state={"$in": states})
    if exp_key is not None:
        query["exp_key"] = exp_key
    return self.handle.jobs.count_documents(query)


def _trials_new_trial_ids(self, last_id):
    # tids are unique across the db, not just within an exp_key (see stock's comment)
    db = self.handle.db
    if not getattr(self.handle, _MARKER, False):
        try:
            db.job_ids.create_index("a", unique=True)
        except pymongo.errors.OperationFailure as e:  # e.g. duplicates left by an old race
            logger.warning("could not create a unique index on job_ids.a: %s", e)
        setattr(self.handle, _MARKER, True)
    # -- mongo docs say you can't upsert an empty document
    query = {"a": 0}
    while True:
        try:
            doc = db.job_ids.find_one_and_update(
                query, {"$inc": {"last_id": last_id}}, upsert=True, return_document=ReturnDocument.BEFORE
            )
        except pymongo.errors.DuplicateKeyError:
            continue  # a concurrent first call created the counter: increment that one
        # None: this call created the counter, so the ids before `last_id` are ours
        lid = 0 if doc is None else doc.get("last_id", 0)
        return list(range(lid, lid + last_id))


# --------------------------------------------------------------------------- MongoWorker


def _worker_run_one(self, host_id=None, reserve_timeout=None, erase_created_workdir=False):
    """Stock ``MongoWorker.run_one`` with :func:`poll_sleep_interval` between empty polls."""
    if host_id is None:
        host_id = (f"{socket.gethostname()}:{os.getpid()}",)
    job = None
    start_time = time.time()
    mj = self.mj
    while job is None:
        if reserve_timeout and (time.time() - start_time) > reserve_timeout:
            raise mongoexp.ReserveTimeout()
        job = mj.reserve(host_id, exp_key=self.exp_key)
        if not job:
            interval = poll_sleep_interval(self.poll_interval)
            logger.info("no job found, sleeping for %.1fs", interval)
            time.sleep(interval)

    logger.debug("job found: %s", job)

    # -- don't let the cmd mess up our trial object
    spec = spec_from_misc(job["misc"])

    ctrl = mongoexp.MongoCtrl(
        trials=mongoexp.MongoTrials(mj, exp_key=job["exp_key"], refresh=False),
        read_only=False,
        current_trial=job,
    )
    if self.workdir is None:
        workdir = job["misc"].get("workdir", os.getcwd())
        if workdir is None:
            workdir = ""
        workdir = os.path.join(workdir, str(job["_id"]))
    else:
        workdir = self.workdir
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        root_logger = logging.getLogger()
        if self.logfilename:
            self.make_log_handler()
            root_logger.addHandler(self.log_handler)
        try:
            worker_fn = load_worker_fn(job, ctrl)
            with temp_dir(workdir, erase_created_workdir), working_dir(workdir):
                result = worker_fn(spec, ctrl)
                result = SONify(result)
        except BaseException as e:
            # XXX: save exception to database, but if this fails, then
            #      at least raise the original traceback properly
            logger.info("job exception: %s", e)
            ctrl.checkpoint()
            mj.update(job, {"state": JOB_STATE_ERROR, "error": (str(type(e)), str(e))})
            raise
    finally:
        if self.logfilename:
            root_logger.removeHandler(self.log_handler)

    logger.info("job finished: %s", job["_id"])
    attachments = result.pop("attachments", {})
    for aname, aval in list(attachments.items()):
        logger.info("mongoexp: saving attachment name=%s (%i bytes)", aname, len(aval))
        ctrl.attachments[aname] = aval
    ctrl.checkpoint(result)
    mj.update(job, {"state": JOB_STATE_DONE})


def load_worker_fn(job, ctrl):
    """The callable ``fn(spec, ctrl)`` a job's ``misc.cmd`` names (stock's cmd protocols)."""
    cmd = job["misc"]["cmd"]
    cmd_protocol = cmd[0]
    if cmd_protocol == "cpickled fn":
        return mongoexp.pickler.loads(cmd[1])
    if cmd_protocol == "call evaluate":
        return mongoexp.pickler.loads(cmd[1]).evaluate
    if cmd_protocol == "token_load":
        cmd_module = ".".join(cmd[1].split(".")[:-1])
        return mongoexp.exec_import(cmd_module, cmd[1])
    if cmd_protocol == "bandit_json evaluate":
        return json_call(cmd[1]).evaluate
    if cmd_protocol == "driver_attachment":
        blob = ctrl.trials.attachments[cmd[1]]
        bandit_name, bandit_args, bandit_kwargs = mongoexp.pickler.loads(blob)
        return json_call(bandit_name, args=bandit_args, kwargs=bandit_kwargs).evaluate
    if cmd_protocol == "domain_attachment":
        blob = ctrl.trials.attachments[cmd[1]]
        try:
            domain = mongoexp.pickler.loads(blob)
        except BaseException:
            logger.info("Error while unpickling.")
            raise
        return domain.evaluate
    raise ValueError("Unrecognized cmd protocol", cmd_protocol)


# --------------------------------------------------------------------------- apply


_PATCHES: list[tuple[Any, str, Any]] = [
    (mongoexp, "parse_url", parse_url),
    (mongoexp, "connection_with_tunnel", connection_with_tunnel),
    (mongoexp, "connection_from_string", connection_from_string),
    (mongoexp, "number_of_jobs_in_db", number_of_jobs_in_db),
    (mongoexp.MongoJobs, "alloc", jobs_alloc),
    (mongoexp.MongoJobs, "new_from_connection_str", jobs_new_from_connection_str),
    (mongoexp.MongoJobs, "__len__", _jobs_len),
    (mongoexp.MongoJobs, "insert", _jobs_insert),
    (mongoexp.MongoJobs, "delete", _jobs_delete),
    (mongoexp.MongoJobs, "delete_all", _jobs_delete_all),
    (mongoexp.MongoJobs, "reserve", _jobs_reserve),
    (mongoexp.MongoJobs, "update", _jobs_update),
    (mongoexp.MongoTrials, "_insert_trial_docs", _trials_insert_trial_docs),
    # the driver's reads and writes ride out a server outage; its poll also sweeps stale jobs
    (mongoexp.MongoTrials, "count_by_state_unsynced", outage.with_sweep(_trials_count_by_state_unsynced)),
    (mongoexp.MongoTrials, "new_trial_ids", outage.retrying(_trials_new_trial_ids)),
    # the driver's refresh reads only what can have changed (refresh.py), through outages
    (mongoexp.MongoTrials, "refresh_tids", outage.retrying(refresh.refresh_tids)),
    (mongoexp.MongoJobs, "create_jobs_indexes", refresh.create_jobs_indexes),
    (mongoexp.MongoWorker, "run_one", _worker_run_one),
    (mongoexp.MongoTrials, "fmin", failures.trials_fmin),
]


def is_applied() -> bool:
    return bool(getattr(mongoexp, _MARKER, False))


def open_jobs(
    url: str, gfs_coll: str = "fs", config_name: str = "spec", **client_kwargs
) -> mongoexp.MongoJobs:
    """A ``MongoJobs`` for a ``mongo://...`` URL, with extra ``MongoClient`` options."""
    apply()
    connection, tunnel, db, coll = connection_from_string(url, **client_kwargs)
    gfs = gridfs.GridFS(db, collection=gfs_coll)
    return mongoexp.MongoJobs(db, coll, gfs, connection, tunnel, config_name)


def apply() -> None:
    """Patch ``hyperopt.mongoexp`` in place for pymongo 4. Idempotent; cheap after the first call."""
    if is_applied():
        return
    for owner, name, replacement in _PATCHES:
        key = f"{getattr(owner, '__name__', owner)}.{name}"
        ORIGINALS[key] = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, replacement)
    setattr(mongoexp, _MARKER, True)
