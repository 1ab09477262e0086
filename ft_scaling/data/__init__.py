"""Data: seqio tasks, the embedded debian_l10n corpus, vocabularies and D_f subsets.

    import ft_scaling.data.tasks                      registers every task (idempotent)
    ft_scaling.data.vocab.get_vocabulary(name)        seqio SentencePiece vocabularies
    ft_scaling.data.subsets.register_finetune_subset  nested, seeded D_f subsets as tasks
    ft-scaling data build debian_l10n                 rebuild the corpus (DEBIAN_L10N_CARD.md)

Nothing is imported here, so `import ft_scaling.data` stays cheap.
"""
