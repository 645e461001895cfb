import torch

# Tests are sized for 2 cores; more threads only add contention.
torch.set_num_threads(min(2, torch.get_num_threads()))
