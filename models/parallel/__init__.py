"""Model parallelism for the GPT on the ``optim.dist`` communicators (SimComm or MPI ranks):

* ``models.parallel.tensor`` -- tensor parallelism (Megatron-LM): each layer's matrices split
  across the ranks, with the f/g all-reduce operators as autodiff Functions;
* ``models.parallel.pipeline`` -- pipeline parallelism: the layers in stages, the batch streamed
  through in micro-batches with the GPipe or 1F1B schedule.

Both train through ``models.training.Trainer`` and equal one process (``demos/parallel.py``).
"""
from .pipeline import (PipelineStage, clip_grad_norm_pp, expected_bubble, partition_layers, pipeline_loss,
                       plot_timeline, simulate, train_pipeline)
from .tensor import (ColumnParallelLinear, RowParallelLinear, TensorParallelGPT, clip_grad_norm_tp,
                     copy_to_tensor_parallel, gather_state_dict, reduce_from_tensor_parallel,
                     shard_state_dict)

__all__ = ["TensorParallelGPT", "ColumnParallelLinear", "RowParallelLinear", "copy_to_tensor_parallel",
           "reduce_from_tensor_parallel", "shard_state_dict", "gather_state_dict", "clip_grad_norm_tp",
           "PipelineStage", "pipeline_loss", "clip_grad_norm_pp", "train_pipeline", "partition_layers",
           "simulate", "expected_bubble", "plot_timeline"]
