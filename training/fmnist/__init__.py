"""The embedded Fashion-MNIST model's own recipe: data, tokenizer and base-model training,
the evaluation classifier, FD-FMNIST and the quality-speed sweep.

The general recorder and shortcut trainer live one level up, in ``training``.
"""
