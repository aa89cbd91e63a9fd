"""The fixed layer every node runs identically: data, tokenizer, dataloader, evaluation, clock. Hypotheses never edit it."""
