"""Speed kernels: faster ways to compute what the models and the loss state as formulas, each with the
measurement that justifies it in its module docstring. They know nothing of backends, configs or training.

  loss.py       output_loss: cross-entropy fused with the output layer (no batch x vocabulary logits)
  dropout.py    dropout, relu_dropout and the Dropout module: cheap CPU masks, ReLU + dropout in one step
  attention.py  attention(q, k, v, mask, causal): softmax(q k^T / sqrt(d)) v, fused kernel or plain products

tests/test_kernels.py checks each against its plain PyTorch formula.
"""
