using System.Text;
using Haven.Core;

namespace Haven.Files.Filters;

/// <summary>
/// A glob over '/'-separated paths: <c>*</c> and <c>?</c> and <c>[…]</c> match within one component, <c>**</c>
/// matches any number of components. A pattern that starts with '/' is anchored at the root; any other pattern
/// may match starting at any component ("*.tmp" excludes every .tmp file, "cache/**" every cache folder's content).
/// A pattern that matches a directory matches everything below it.
/// </summary>
public sealed class PathPattern
{
    private readonly string[] _parts;
    private readonly bool _anchored;

    public PathPattern(string pattern, bool ignoreCase)
    {
        if (string.IsNullOrWhiteSpace(pattern))
        {
            throw new HavenException(ErrorCode.Usage, "an empty exclude pattern matches nothing; remove it");
        }

        Text = pattern;
        IgnoreCase = ignoreCase;
        _anchored = pattern.StartsWith('/');
        var p = ignoreCase ? pattern.ToLowerInvariant() : pattern;
        _parts = p.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (_parts.Length == 0)
        {
            throw new HavenException(ErrorCode.Usage, $"exclude pattern '{pattern}' would exclude everything");
        }
    }

    public string Text { get; }

    public bool IgnoreCase { get; }

    /// <summary>Does the pattern match <paramref name="components"/> (a path split at '/') or one of its ancestors?</summary>
    public bool Matches(IReadOnlyList<string> components)
    {
        if (IgnoreCase)
        {
            components = components.Select(c => c.ToLowerInvariant()).ToArray();
        }

        if (_anchored)
        {
            return MatchFrom(0, components, 0);
        }

        for (int start = 0; start < components.Count; start++)
        {
            if (MatchFrom(0, components, start))
            {
                return true;
            }
        }

        return false;
    }

    // True when parts[pi..] matches components[ci..k] for some k (a prefix match: ancestors count).
    private bool MatchFrom(int pi, IReadOnlyList<string> components, int ci)
    {
        if (pi == _parts.Length)
        {
            return true;
        }

        if (_parts[pi] == "**")
        {
            for (int k = ci; k <= components.Count; k++)
            {
                if (MatchFrom(pi + 1, components, k))
                {
                    return true;
                }
            }

            return false;
        }

        return ci < components.Count && Glob(_parts[pi], components[ci]) && MatchFrom(pi + 1, components, ci + 1);
    }

    /// <summary>Matches one component against one glob part (*, ?, [set], [!set], \escape).</summary>
    public static bool Glob(string pattern, string name) => Glob(pattern, 0, name, 0);

    private static bool Glob(string p, int pi, string s, int si)
    {
        while (pi < p.Length)
        {
            char c = p[pi];
            switch (c)
            {
                case '*':
                    while (pi < p.Length && p[pi] == '*')
                    {
                        pi++;
                    }

                    if (pi == p.Length)
                    {
                        return true;
                    }

                    for (int k = si; k <= s.Length; k++)
                    {
                        if (Glob(p, pi, s, k))
                        {
                            return true;
                        }
                    }

                    return false;
                case '?':
                    if (si >= s.Length)
                    {
                        return false;
                    }

                    pi++;
                    si++;
                    break;
                case '[':
                    if (si >= s.Length)
                    {
                        return false;
                    }

                    int end = pi + 2 <= p.Length ? p.IndexOf(']', pi + 2) : -1;
                    if (end < 0)
                    {
                        goto default; // a lone '[' is literal
                    }

                    bool negate = p[pi + 1] is '!' or '^';
                    string set = p[(pi + (negate ? 2 : 1))..end];
                    if (InSet(set, s[si]) == negate)
                    {
                        return false;
                    }

                    pi = end + 1;
                    si++;
                    break;
                case '\\' when pi + 1 < p.Length:
                    if (si >= s.Length || s[si] != p[pi + 1])
                    {
                        return false;
                    }

                    pi += 2;
                    si++;
                    break;
                default:
                    if (si >= s.Length || s[si] != c)
                    {
                        return false;
                    }

                    pi++;
                    si++;
                    break;
            }
        }

        return si == s.Length;
    }

    private static bool InSet(string set, char c)
    {
        for (int i = 0; i < set.Length; i++)
        {
            if (i + 2 < set.Length && set[i + 1] == '-')
            {
                if (c >= set[i] && c <= set[i + 2])
                {
                    return true;
                }

                i += 2;
            }
            else if (set[i] == c)
            {
                return true;
            }
        }

        return false;
    }
}

/// <summary>A list of patterns; a path is selected when any matches.</summary>
public sealed class PatternSet
{
    private readonly List<PathPattern> _patterns = [];

    public int Count => _patterns.Count;

    public IEnumerable<string> Texts => _patterns.Select(p => (p.IgnoreCase ? "i:" : "") + p.Text);

    public void Add(string pattern, bool ignoreCase) => _patterns.Add(new PathPattern(pattern, ignoreCase));

    /// <summary>Reads patterns from a file: one per line, '#' starts a comment, blank lines are ignored.</summary>
    public void AddFile(string file, bool ignoreCase)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(file, Encoding.UTF8);
        }
        catch (IOException e)
        {
            throw new HavenException(ErrorCode.Usage, $"cannot read exclude file {file}: {e.Message}", null, e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new HavenException(ErrorCode.Usage, $"cannot read exclude file {file}: permission denied", null, e);
        }

        foreach (var raw in lines)
        {
            var line = raw.Trim();
            if (line.Length > 0 && !line.StartsWith('#'))
            {
                Add(line, ignoreCase);
            }
        }
    }

    public bool Matches(IReadOnlyList<string> components)
    {
        foreach (var p in _patterns)
        {
            if (p.Matches(components))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Splits a path (absolute or relative) into its non-empty components.</summary>
    public static string[] Split(string path) => path.Split('/', StringSplitOptions.RemoveEmptyEntries);
}
