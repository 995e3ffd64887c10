"""Evaluation of pause models: task files, the paper's metrics, the M_inf sweep and its reports."""
