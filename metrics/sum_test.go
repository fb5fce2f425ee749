package metrics_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/metrics"
)

func TestSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"op", "code"})
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "h_seconds", Help: "h"}, []string{"op"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	reg.MustRegister(c, h, g)
	c.WithLabelValues("get", "200").Add(2)
	c.WithLabelValues("get", "503").Add(3)
	c.WithLabelValues("put", "200").Add(5)
	h.WithLabelValues("get").Observe(1)
	h.WithLabelValues("get").Observe(7)
	g.Set(4)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"c_total", nil, 10},
		{"c_total", []string{"op", "get"}, 5},
		{"c_total", []string{"op", "get", "code", "503"}, 3},
		{"c_total", []string{"op", "none"}, 0},
		{"h_seconds", []string{"op", "get"}, 2},
		{"g", nil, 4},
		{"missing", nil, 0},
	} {
		if got, err := metrics.Sum(reg, tc.name, tc.labels...); err != nil || got != tc.want {
			t.Errorf("Sum(%s, %v) = %v, %v; want %v", tc.name, tc.labels, got, err, tc.want)
		}
	}
}
