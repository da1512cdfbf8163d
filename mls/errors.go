package mls

import "fmt"

// ValidationError reports a rule of RFC 9420 that an object breaks. Rule is
// a short description of the rule, Section the RFC section it comes from
// (for example "7.9.2"), so that a Delivery Service can return both to the
// client that sent the object.
type ValidationError struct {
	Rule    string
	Section string
	Err     error // optional underlying cause
}

func (e *ValidationError) Error() string {
	msg := fmt.Sprintf("mls: %s (RFC 9420 §%s)", e.Rule, e.Section)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *ValidationError) Unwrap() error { return e.Err }

// invalid returns a *ValidationError for rule from section.
func invalid(section, rule string) error {
	return &ValidationError{Rule: rule, Section: section}
}

// invalidf is invalid with a formatted rule.
func invalidf(section, format string, args ...any) error {
	return &ValidationError{Rule: fmt.Sprintf(format, args...), Section: section}
}
