"""The A/B update of a model set as one state machine (DESIGN.md, A/B slots).

events.py       what a state reports when it is done
transitions.py  the one table (state, event) -> next state
states.py       one small class per state
machine.py      the driver: persists each state before it acts, counts steps
engine.py       what the agent calls: update, recover, retry, outcomes
modelset.py     the set a slot holds; switch.py the runners that serve it
"""
