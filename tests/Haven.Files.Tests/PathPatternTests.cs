using Haven.Files.Filters;
using Xunit;

namespace Haven.Files.Tests;

public class PathPatternTests
{
    [Theory]
    [InlineData("*.tmp", "/home/u/a.tmp", true)]
    [InlineData("*.tmp", "/home/u/a.txt", false)]
    [InlineData("cache", "/home/u/cache/x/y", true)]
    [InlineData("/home/*/cache", "/home/u/cache", true)]
    [InlineData("/home/*/cache", "/srv/home/u/cache", false)]
    [InlineData("docs/**/old", "/a/docs/x/y/old/file", true)]
    [InlineData("file[0-9]", "/a/file7", true)]
    [InlineData("file[!0-9]", "/a/file7", false)]
    [InlineData("[", "/a/[", true)]
    [InlineData("a[", "/a[", true)]
    [InlineData("[]", "/x", false)]
    [InlineData("x\\*", "/x*", true)]
    public void Patterns_MatchPathsAndTheirAncestors(string pattern, string path, bool expected)
    {
        Assert.Equal(expected, new PathPattern(pattern, ignoreCase: false).Matches(PatternSet.Split(path)));
    }

    [Fact]
    public void MalformedGlobs_NeverThrow()
    {
        var rng = new Random(3);
        const string alphabet = "ab*?[]!-\\/";
        for (int i = 0; i < 5000; i++)
        {
            var pattern = new string(Enumerable.Range(0, rng.Next(1, 8)).Select(_ => alphabet[rng.Next(alphabet.Length)]).ToArray());
            if (pattern.Trim('/').Length == 0)
            {
                continue;
            }

            var path = "/" + new string(Enumerable.Range(0, rng.Next(1, 8)).Select(_ => alphabet[rng.Next(alphabet.Length)]).ToArray());
            _ = new PathPattern(pattern, ignoreCase: i % 2 == 0).Matches(PatternSet.Split(path));
        }
    }
}
