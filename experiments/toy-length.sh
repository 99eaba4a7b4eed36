#!/bin/sh
# The length experiment on the toy pair (Bahdanau et al., 2015, Figure 2, for mtcli's backends):
# train the three backends (and the dot/general attention variants), then compare them on the toy test set.
# Training again is a no-op for runs already finished (they resume at their last step).
#   sh experiments/toy-length.sh            (from the project folder, with .venv/bin on PATH or MTCLI set)
set -e
MTCLI=${MTCLI:-mtcli}
for backend in seq2seq attention transformer; do
    "$MTCLI" train "experiments/toy-$backend.yaml"
done
for score in dot general; do
    "$MTCLI" train experiments/toy-attention.yaml --set name=toy-attention-$score --set model.attention=$score
done
"$MTCLI" compare runs/toy-seq2seq runs/toy-attention runs/toy-attention-dot runs/toy-attention-general \
    runs/toy-transformer -o docs/toy-length.png
