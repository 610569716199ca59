"""Model parallelism: tensor- and pipeline-parallel GPT on the optim.dist communicator."""
