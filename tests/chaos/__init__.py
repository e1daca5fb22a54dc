"""Proof under chaos: randomized fault rounds against real consul-elect candidates and a real Consul
cluster, and a checker that judges the recorded history (issue 10).

    make chaos [ROUNDS=N] [SEED=S]          # = PYTHONPATH=tests python -m chaos --rounds N --seed S

recorder.py  the command each candidate runs while leading: records its life, writes to a fenced resource
history.py   the events file read back as leadership terms; the nemesis's records of what it did
nemesis.py   the seeded choice of faults, and how each is applied and healed
checker.py   the documented promises and the bound table; judges a whole history
runner.py    one run: cluster, candidates, rounds, clean-up, verdict, summary and JSON
"""
