package steer

import "testing"

func TestCookie(t *testing.T) {
	for _, c := range []struct {
		name  string
		index int
		check uint16
		hex   string
	}{
		{"first", 0, 1, "00000001"},
		{"both bytes", 0x0102, 0xa1b2, "0102a1b2"},
		{"last index", 1023, 0xffff, "03ffffff"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k := CookieOf(c.index, c.check)
			if k.Index() != c.index || k.Check() != c.check || k.String() != c.hex {
				t.Errorf("CookieOf(%d, %#x) = %s (index %d, check %#x); want %s", c.index, c.check, k, k.Index(), k.Check(), c.hex)
			}
		})
	}
	if CheckOf(0xdead_beef) != 0xbeef {
		t.Errorf("CheckOf takes the tag's low 16 bits")
	}
}
