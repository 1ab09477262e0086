"""Early-stopped Bayesian hyperparameter search (`ft-scaling search`).

config.py    Search (gin): task, base model, method, space, D_f, trials, early fraction
             -> the pretraining run and one finetuning run per sampled config
space.py     SearchSpace (gin): the sampled hyperparameters and their distributions
run.py       run_search: Optuna TPE over early metrics, then the best to the full budget,
             every run trained and recorded by study/execute.py; resumable after a kill
progress.py  progress lines with an ETA
report.py    trials.csv, early_vs_final.png, search_report.md (rank agreement)
main.py      the CLI
"""
