"""The autoscaling advisor: deployment pools sized by the traffic the gateway sees, within tenants' plan quotas.

Every process samples each pool's signals (:mod:`.signals`) and publishes them
(Redis, or in-process); one process of the fleet holds a lease
(:mod:`.lease`) and decides (:mod:`.decision`, a pure function), checks the
quota before a scale-up (:mod:`.quota`), records the decision
(:mod:`.history`) and acts on it (:mod:`.actuators`). :mod:`.scaler` runs it
every interval.
"""

from tollgate.scaling.decision import Decision, decide
from tollgate.scaling.scaler import Autoscaler, PoolStatus
from tollgate.scaling.signals import Sample, Signals, aggregate

__all__ = ["Autoscaler", "Decision", "PoolStatus", "Sample", "Signals", "aggregate", "decide"]
