package config

import "strings"

// Near returns the names a user may have meant by typed, for a "did you
// mean": those within two edits of it (a typo, a letter missing or
// doubled, two swapped), and those it is the start of. A name of one or
// two letters is near only when it starts with typed.
func Near(typed string, names []string) []string {
	var near []string
	for _, n := range names {
		if n == typed {
			continue
		}
		if strings.HasPrefix(n, typed) && typed != "" || len(n) > 2 && editDistance(strings.ToLower(typed), strings.ToLower(n)) <= 2 {
			near = append(near, n)
		}
	}
	return near
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// didYouMean is what follows an unknown name in a message, before the
// list of the names there are: ": did you mean X?" (or "X or Y?") when
// names has some near typed, else ";".
func didYouMean(typed string, names []string) string {
	near := Near(typed, names)
	if len(near) == 0 {
		return ";"
	}
	return ": did you mean " + strings.Join(near, " or ") + "?"
}
