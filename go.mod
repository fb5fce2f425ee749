module github.com/gembatch/gembatch

go 1.26.8
