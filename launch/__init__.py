"""The TPU pod launcher of `ft-scaling launch` (launch/tpu.py); builds gcloud command lines."""
