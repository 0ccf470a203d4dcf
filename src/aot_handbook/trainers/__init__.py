"""The trainers (TRL 1.16; tests/unit/trainers/test_aot.py::test_trl_contract guards the hooks they override).

- ``aot``: ``AOTTrainer`` (paired-format data, TRL's DPOTrainer) and ``UnpairedAOTTrainer`` (truly unpaired
  data, TRL's KTOTrainer): the AOT objective, one row per pair, the FSD logs;
- ``baselines``: TRL's DPO / KTO trainers with the shared reference cache, and the NLL term;
- ``reference``: the reference log-prob cache shared across runs (``SharedRefCache``);
- ``sampler``: ``BalancedLabelSampler``, both labels in every unpaired batch;
- ``distributed``: ``gather_with_grad``, the all-gather of the global sort.
"""

from .aot import AOTTrainer, UnpairedAOTTrainer
from .baselines import HandbookDPOTrainer, HandbookKTOTrainer, mean_nll
from .distributed import gather_with_grad
from .reference import SharedRefCache, is_zero3_partitioned, reference_weights_hash
from .sampler import BalancedLabelSampler

__all__ = ["AOTTrainer", "UnpairedAOTTrainer", "HandbookDPOTrainer", "HandbookKTOTrainer", "SharedRefCache",
           "BalancedLabelSampler", "gather_with_grad", "mean_nll", "is_zero3_partitioned", "reference_weights_hash"]
