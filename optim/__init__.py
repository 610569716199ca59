"""minigrad.optim: optimizers on raw NumPy arrays keyed by parameter name.

See optim/base.py for the interface and how to write a new optimizer.
``optim.create(name, params, **kw)`` builds any registered optimizer; ``optim.available()``
lists them and ``optim.accepts(name)`` gives the keyword arguments one takes. Modules that
register optimizers are imported below.
"""
from .base import (Optimizer, accepts, available, create, flatten_state_dict, option_default,
                   register, unflatten_state_dict)
from .groups import param_groups, param_groups_no_decay, split_matrices, split_roles
from .sgd import AGD, GD, SGD, HeavyBall
from .adaptive import AdaGrad, Adam, AdamW, RMSProp
from .perturbed import PerturbedGD
from . import prox
from .prox import FISTA, ISTA
from . import sampling, schedules
from .schedules import LRScheduler, clip_grad_norm_
from . import zo  # registers zo-sgd, mezo, lozo
from .block import BAdam, BlockCoordinateDescent, LISA, MISA, block_params  # bcd, lisa, badam, misa
from .subspace import GaLore, GoLore, Flora, RSO  # galore, golore, flora, rso
from .torch_family import NAdam, RAdam, Adamax, Adadelta, ASGD, Rprop, LBFGS  # the rest of torch.optim
from .modern import Adafactor, AdamMini, Lion, Muon  # adafactor, adam-mini, lion, muon
from .preconditioned import Anderson, Shampoo, SOAP  # anderson, shampoo, soap
