"""The data-set builders behind tools/make_rec.sh: `writer` (atomic record sets), `sources`
(checked inputs), one module per data set (`cifar`, `svhn`, `imagenet`, `demo`)."""
