"""Records: ICD-10 and image corpora, data folders, splits, partitions, label budgets, de-id."""
