"""The hyperopt compatibility layer: hyperopt's Mongo mode (``MongoTrials``, ``MongoJobs``) on
pymongo 4, the driver's patches (wake-ups, incremental refresh, outages, failed-trial reports).
Imported on both sides: by the driver on the control node and by the workers."""
