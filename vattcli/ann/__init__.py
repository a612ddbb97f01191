"""Approximate nearest-neighbour search for large retrieval indexes: a plan chosen from the collection size and a
memory budget (``choose_plan``), and the FAISS index it describes (``AnnIndex``, an optional extra)."""

from vattcli.ann.faiss_index import FAISS_MISSING, AnnIndex, FaissMissing, set_threads
from vattcli.ann.plan import EXACT_BELOW, PlanError, choose_plan

__all__ = ["EXACT_BELOW", "FAISS_MISSING", "AnnIndex", "FaissMissing", "PlanError", "choose_plan", "set_threads"]
