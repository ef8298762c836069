//go:build !unix

package outbuf

import "os"

// fileFd is unused off unix: write goes through the os package.
func fileFd(*os.File) int { return -1 }

// write writes all of b to the file.
func (w *core) write(b []byte) (int, error) { return w.f.Write(b) }
