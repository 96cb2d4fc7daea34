"""A task module declaring many tasks (a large application's worth, generated)."""

import pgbg

for _i in range(4000):
    exec(f"def import_and_normalise_the_study_series_number_{_i}(x):\n    return x\n",
         globals())
    pgbg.task(task_type="many")(globals()[f"import_and_normalise_the_study_series_number_{_i}"])
