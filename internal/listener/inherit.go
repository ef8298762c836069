package listener

// FirstFd is the first descriptor of the socket-activation protocol
// (SD_LISTEN_FDS_START).
const FirstFd = 3

// Inherited is one descriptor passed with socket activation.
type Inherited struct {
	Name string // from LISTEN_FDNAMES; "" when not given
	Fd   int
}

// LookupEnv is how Inherit reads a variable: os.LookupEnv for the
// process's own environment.
type LookupEnv func(key string) (value string, ok bool)

// Inherit has the same shape on every system (inherit_linux.go,
// inherit_others.go).
var _ func(LookupEnv, int, int) ([]Inherited, error) = Inherit
