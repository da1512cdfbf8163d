package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mlsds/mlsds/ds"
)

// stockCollector reports the directory's claimable KeyPackages per cipher
// suite as the gauge mlsds_key_package_stock, counted in the store when
// Prometheus scrapes, so that every node of a shared database reports the
// same figure.
type stockCollector struct {
	svc  *ds.Service
	desc *prometheus.Desc
}

func newStockCollector(svc *ds.Service) *stockCollector {
	return &stockCollector{svc: svc, desc: prometheus.NewDesc("mlsds_key_package_stock",
		"Claimable KeyPackages in the directory (unclaimed, valid, not last-resort), by cipher suite.",
		[]string{"cipher_suite"}, nil)}
}

func (c *stockCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *stockCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stock, err := c.svc.KeyPackageStock(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for cs, n := range stock {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), strconv.Itoa(int(cs)))
	}
}

// watchKeyPackageStock adds the stock gauge of svc to the registry. A
// registry shared by several servers over one Service keeps the first.
func (m *Metrics) watchKeyPackageStock(svc *ds.Service) error {
	err := m.Registry.Register(newStockCollector(svc))
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		return nil
	}
	return err
}
