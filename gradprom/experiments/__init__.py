"""The evidence grid: does GradProm keep image quality while helping the task, against the baselines?"""
