"""Model parallelism for the GPT on the ``optim.dist`` communicators (SimComm or MPI ranks):

* ``models.parallel.tensor`` -- tensor parallelism (Megatron-LM): each layer's matrices split
  across the ranks, with the f/g all-reduce operators as autodiff Functions; equal to one process.
"""
from .tensor import (ColumnParallelLinear, RowParallelLinear, TensorParallelGPT, clip_grad_norm_tp,
                     copy_to_tensor_parallel, gather_state_dict, reduce_from_tensor_parallel,
                     shard_state_dict)

__all__ = ["TensorParallelGPT", "ColumnParallelLinear", "RowParallelLinear", "copy_to_tensor_parallel",
           "reduce_from_tensor_parallel", "shard_state_dict", "gather_state_dict", "clip_grad_norm_tp"]
