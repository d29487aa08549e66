"""Sequential fine-tuning: ``train`` runs a recipe's stages in order (each from the previous
stage's weights), ``callbacks`` logs metrics and marks complete checkpoints, ``manifest`` writes
what every published folder was made from."""
