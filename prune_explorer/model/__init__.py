"""The model stage: channel graph, prune plans, surgery, cost, and saving without pickle."""
