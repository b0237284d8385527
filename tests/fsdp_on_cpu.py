"""`python tests/fsdp_on_cpu.py train ...` under `accelerate launch --config_file examples/accelerate/fsdp-*.yaml`:
the RewardBooth CLI with accelerate's FSDP selected on CPU processes (gloo), for the sharded-run tests.

accelerate 1.16 builds the FSDP plugin from the launch config on CPU too, then `AcceleratorState` picks FSDP
only for accelerator device types (its list of MULTI_GPU, MULTI_XPU, ...; MULTI_CPU is not in it), so CPU
processes train as DDP. This shim runs the two lines that branch skips for MULTI_CPU -- the distributed type
and the plugin's mixed precision -- and nothing else: preparing (torch fully_shard on gloo), sharded
checkpoints (torch.distributed.checkpoint) and the full-state gather are accelerate's and torch's own code.
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None,
                 fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP  # as state.py does for MULTI_GPU
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from rewardbooth.cli import main

    sys.exit(main(sys.argv[1:]))
