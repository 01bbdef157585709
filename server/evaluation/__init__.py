"""The evaluation stage after the rounds: fine-tune, scratch, classical and probe arms, pruning."""
