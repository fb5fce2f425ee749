package ownership

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gembatch/gembatch/record"
)

// Metrics count takeovers. A nil Registerer gives metrics that are kept but not exported.
type Metrics struct {
	claimed *prometheus.CounterVec
	lost    prometheus.Counter
	live    prometheus.Gauge
}

// NewMetrics registers the ownership metrics on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		claimed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gembatch_ownership_claimed_records_total",
			Help: "Records this replica took over from a dead or restarted owner, by the state they were in.",
		}, []string{"state"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gembatch_ownership_lost_records_total",
			Help: "Records this replica worked on that another replica took over.",
		}),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gembatch_ownership_live_records",
			Help: "Records not cleaned, across every replica, as this replica's watch sees them.",
		}),
	}
	for _, st := range record.States {
		m.claimed.WithLabelValues(string(st))
	}
	if reg != nil {
		reg.MustRegister(m.claimed, m.lost, m.live)
	}
	return m
}
