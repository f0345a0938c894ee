"""pyhoptcluster: a Hyperopt cluster brought up by Ansible and driven from Python.

Importing the package makes hyperopt's Mongo mode (``hyperopt.mongoexp``) work on pymongo 4.
"""

from pyhoptcluster import trials as _trials

_trials.apply()

__version__ = "0.1.0"
